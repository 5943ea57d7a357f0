package cluster

import (
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"
)

func setsid() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }

func sleepMs(n int) { time.Sleep(time.Duration(n) * time.Millisecond) }

// waitBird waits until BIRD answers on its control socket (or dies).
func waitBird(sock string, pid int) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if conn, err := net.DialTimeout("unix", sock, 100*time.Millisecond); err == nil {
			conn.Close()
			return nil
		}
		if !alive(pid) {
			return fmt.Errorf("it exited")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no control socket %s after 5 s", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}
