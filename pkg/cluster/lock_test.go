package cluster

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Lock serialises real processes: several processes each increment a
// counter file many times under the lab lock (read, then write back +1),
// and half the time remove the lock file while holding it, as destroy
// does. Without mutual exclusion updates would be lost; with it the count
// is exact. No root needed.
func TestLockSerialisesProcesses(t *testing.T) {
	state := t.TempDir()
	const procs, rounds = 4, 200
	var cmds []*exec.Cmd
	for i := 0; i < procs; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelper$")
		cmd.Env = append(os.Environ(), "KLAB_LOCK_HELPER="+state, "KLAB_LOCK_ROUNDS="+strconv.Itoa(rounds), "KLAB_LOCK_ID="+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("helper: %v", err)
		}
	}
	b, err := os.ReadFile(filepath.Join(state, "counter"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != strconv.Itoa(procs*rounds) {
		t.Fatalf("counter %s, want %d: two processes held the lock at once", got, procs*rounds)
	}
}

func TestLockHelper(t *testing.T) {
	state := os.Getenv("KLAB_LOCK_HELPER")
	if state == "" {
		t.Skip("helper process of TestLockSerialisesProcesses")
	}
	rounds, _ := strconv.Atoi(os.Getenv("KLAB_LOCK_ROUNDS"))
	id, _ := strconv.Atoi(os.Getenv("KLAB_LOCK_ID"))
	counter := filepath.Join(state, "counter")
	for i := 0; i < rounds; i++ {
		f, err := Lock(state, "rl-lock", nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(counter)
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if err := os.WriteFile(counter, []byte(strconv.Itoa(n+1)), 0o600); err != nil {
			t.Fatal(err)
		}
		if (i+id)%2 == 0 {
			os.Remove(filepath.Join(state, "rl-lock.lock")) // as destroy does, holding it
		}
		f.Close()
	}
}

// A process waiting for the lock says so, once, and gets it when the
// holder releases it; the holder removing the lock file on its way out
// (destroy) does not let a newcomer in beside the waiter.
func TestLockWaitsAndSurvivesRemoval(t *testing.T) {
	state := t.TempDir()
	holder, err := Lock(state, "rl-w", nil)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	got := make(chan *os.File, 1)
	go func() {
		f, err := Lock(state, "rl-w", pw)
		if err != nil {
			t.Error(err)
		}
		got <- f
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil || !strings.Contains(line, `waiting for another klab command on lab "rl-w"`) {
		t.Fatalf("waiter said %q (%v)", line, err)
	}
	go io.Copy(io.Discard, pr)
	path := filepath.Join(state, "rl-w.lock")
	os.Remove(path)
	holder.Close()
	waiter := <-got
	defer waiter.Close()
	if !sameFile(waiter, path) {
		t.Fatal("the waiter holds a lock file that is no longer the lab's")
	}
	if f, ok := tryLockPath(path); ok {
		f.Close()
		t.Fatal("a newcomer got the lock while the waiter holds it")
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("lock file: %v %v, want mode 0600", st, err)
	}
}

// Save is atomic and private: concurrent readers only ever see a complete
// state (old or new), the file is 0600 in a 0700 directory, no temporary
// file is left, and a temporary file left by a crash does not matter.
func TestSaveAtomicPrivateConcurrentReaders(t *testing.T) {
	state := filepath.Join(t.TempDir(), "klab")
	l := &Lab{Name: "rl-save", Backend: BackendVXLAN}
	if err := Save(state, l); err != nil {
		t.Fatal(err)
	}
	// A crash between writing the temporary file and renaming it.
	if err := os.WriteFile(filepath.Join(state, "rl-save", ".state-123.json"), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	errs := make(chan error, 4)
	for r := 0; r < 4; r++ {
		go func() {
			for {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				got, err := Load(state, "rl-save")
				if err != nil || got.Name != "rl-save" {
					errs <- err
					return
				}
			}
		}()
	}
	for i := 0; i < 300; i++ {
		l.Nodes = append(l.Nodes, &Node{Name: "node" + strconv.Itoa(i)})
		if err := Save(state, l); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	for r := 0; r < 4; r++ {
		if err := <-errs; err != nil {
			t.Fatalf("a reader saw an incomplete state: %v", err)
		}
	}
	got, err := Load(state, "rl-save")
	if err != nil || len(got.Nodes) != 300 {
		t.Fatalf("final state: %v nodes, %v", len(got.Nodes), err)
	}
	for p, want := range map[string]os.FileMode{StateFile(state, "rl-save"): 0o600, filepath.Join(state, "rl-save"): 0o700} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", p, st.Mode().Perm(), err, want)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(state, "rl-save"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".state-") && e.Name() != ".state-123.json" {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	// A lab directory created earlier with a wider mode is narrowed.
	os.Chmod(filepath.Join(state, "rl-save"), 0o755)
	if err := Save(state, l); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(state, "rl-save")); st.Mode().Perm() != 0o700 {
		t.Errorf("lab directory mode %v after Save, want 0700", st.Mode().Perm())
	}
}

// A lock directory made by Lock is private.
func TestLockCreatesPrivateStateDir(t *testing.T) {
	state := filepath.Join(t.TempDir(), "run-klab")
	f, err := Lock(state, "rl-p", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st, err := os.Stat(state); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("state directory mode %v (%v), want 0700", st.Mode().Perm(), err)
	}
}

// A command on a lab that does not exist, or bad input for a new lab, leaves
// no lock file and no state directory behind.
func TestFailedOpenLeavesNoLockFile(t *testing.T) {
	state := t.TempDir() + "/state"
	if _, err := Open(state, "rl-nolab", nil, nil); err == nil {
		t.Fatal("opened a lab that does not exist")
	}
	c, err := Open(state, "rl-nolab", &Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PlanNode(NodeSpec{Name: "Bad Name"}); err == nil {
		t.Fatal("bad node name accepted")
	}
	c.Close()
	if _, err := Open(state, "rl-nolab", &Options{Backend: "ipip"}, nil); err == nil {
		t.Fatal("unknown backend accepted")
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		ents, _ := os.ReadDir(state)
		t.Errorf("state dir left behind with %v", ents)
	}
}
