package doctor

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/klab-dev/klab/pkg/cni"
	"github.com/klab-dev/klab/pkg/netns"
)

// Capabilities klab needs beyond being uid 0: a container drops most of
// them unless it runs --privileged (or with --cap-add).
var Capabilities = []struct {
	Bit  uint
	Name string
	Why  string
}{
	{12, "CAP_NET_ADMIN", "to create links, addresses, routes and rules"},
	{21, "CAP_SYS_ADMIN", "to create network and mount namespaces and bind-mount them under /run/netns"},
	{13, "CAP_NET_RAW", "for ping and packet capture (raw and AF_PACKET sockets)"},
}

// EffectiveCaps reads this process's effective capability set (CapEff in
// /proc/self/status).
func EffectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapEff line in /proc/self/status")
}

// MissingCapability returns an error naming the first capability klab
// needs that this process lacks, with the fix; nil if it has them all (or
// the set cannot be read).
func MissingCapability() error {
	caps, err := EffectiveCaps()
	if err != nil {
		return nil
	}
	for _, c := range Capabilities {
		if caps&(1<<c.Bit) == 0 {
			return fmt.Errorf("klab runs as root but without %s, which it needs %s: in a container add --cap-add %s (or run it --privileged); outside one, do not drop it (capsh, systemd CapabilityBoundingSet)",
				c.Name, c.Why, strings.TrimPrefix(c.Name, "CAP_"))
		}
	}
	return nil
}

// InContainer guesses whether this process runs in a container, from the
// markers docker and podman leave and from PID 1's cgroup.
func InContainer() (bool, string) {
	if _, err := os.Stat("/.dockerenv"); err == nil {
		return true, "docker (/.dockerenv)"
	}
	if _, err := os.Stat("/run/.containerenv"); err == nil {
		return true, "podman (/run/.containerenv)"
	}
	if b, err := os.ReadFile("/proc/1/cgroup"); err == nil {
		for _, k := range []string{"docker", "kubepods", "containerd", "lxc"} {
			if strings.Contains(string(b), k) {
				return true, k + " (/proc/1/cgroup)"
			}
		}
	}
	return false, ""
}

// mountOpts returns the mount options and optional fields (shared:N, ...)
// of the mount at path in /proc/self/mountinfo, and whether it is a mount
// point.
func mountOpts(path string) (opts, optional string, ok bool) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", "", false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || f[4] != path {
			continue
		}
		// Fields: id parent major:minor root mountpoint options optional... - type source super
		var opt []string
		for _, x := range f[6:] {
			if x == "-" {
				break
			}
			opt = append(opt, x)
		}
		opts, optional, ok = f[5], strings.Join(opt, " "), true // the last mount at path wins
	}
	return opts, optional, ok
}

// ContainerChecks finds what a container takes away from klab: missing
// capabilities, /run/netns that cannot be made a shared mount (namespaces
// would not show in 'klab exec' and 'ip netns exec' mount namespaces),
// a read-only /sys (klab exec mounts the namespace's own sysfs) and
// nf_tables (kube-proxy's nftables mode, iptables-nft).
func ContainerChecks() []Check {
	var out []Check
	if in, how := InContainer(); in {
		out = append(out, Check{"container", OK, "running in a container: " + how + "; it needs --privileged, or the capabilities and mounts of docs/containers.md", ""})
	}
	if caps, err := EffectiveCaps(); err == nil {
		var missing []string
		for _, c := range Capabilities {
			if caps&(1<<c.Bit) == 0 {
				missing = append(missing, c.Name+" ("+c.Why+")")
			}
		}
		if len(missing) == 0 {
			out = append(out, Check{"capabilities", OK, fmt.Sprintf("CapEff %016x holds NET_ADMIN, SYS_ADMIN and NET_RAW", caps), ""})
		} else {
			out = append(out, Check{"capabilities", Fail, "missing " + strings.Join(missing, ", "), "docker run --cap-add NET_ADMIN --cap-add SYS_ADMIN --cap-add NET_RAW (or --privileged)"})
		}
	}
	if opts, optional, ok := mountOpts(netns.RunDir); ok {
		if strings.Contains(optional, "shared:") {
			out = append(out, Check{"/run/netns", OK, "a shared mount: namespaces added later reach every mount namespace", ""})
		} else {
			out = append(out, Check{"/run/netns", Warn, "mounted (" + opts + ") but not shared: namespaces added later do not propagate into running 'klab exec' / 'ip netns exec' sessions", "mount --make-shared /run/netns (klab and ip netns do it when they create the mount)"})
		}
	} else if err := writable("/run"); err != nil {
		out = append(out, Check{"/run/netns", Fail, "/run is not writable (" + err.Error() + "): namespaces cannot be pinned under /run/netns", "give the container a writable /run: docker run --tmpfs /run"})
	} else {
		out = append(out, Check{"/run/netns", OK, "not mounted yet: klab makes it a shared bind mount on first use, as ip netns does", ""})
	}
	if opts, _, ok := mountOpts("/sys"); ok && hasOpt(opts, "ro") {
		out = append(out, Check{"/sys", Warn, "/sys is mounted read-only: 'klab exec' cannot mount a node's own sysfs, and ip's view of /sys/class/net is the container's", "docker run --privileged (or --security-opt systempaths=unconfined)"})
	}
	if os.Geteuid() == 0 {
		out = append(out, nftCheck())
	}
	return out
}

func hasOpt(opts, o string) bool {
	for _, x := range strings.Split(opts, ",") {
		if x == o {
			return true
		}
	}
	return false
}

func writable(dir string) error {
	f, err := os.CreateTemp(dir, ".klab-doctor-")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}

// nftCheck lists the nftables tables of a throwaway namespace.
func nftCheck() Check {
	name := netns.Name("doctor", fmt.Sprintf("nft%d", os.Getpid()))
	if _, err := netns.Ensure(name); err != nil {
		return Check{"nf_tables", Warn, "not checked: " + err.Error(), ""}
	}
	defer netns.Delete(name)
	h, err := netns.Open(name)
	if err != nil {
		return Check{"nf_tables", Warn, "not checked: " + err.Error(), ""}
	}
	defer h.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err == nil {
		_, err = c.ListTables()
		c.CloseLasting()
	}
	if err != nil {
		return Check{"nf_tables", Warn, fmt.Sprintf("nf_tables is unavailable (%v): kube-proxy's nftables mode and iptables-nft cannot work", err), "modprobe nf_tables on the host (a container cannot load kernel modules), or use iptables-legacy"}
	}
	return Check{"nf_tables", OK, "nf_tables works (kube-proxy's nftables mode, iptables-nft)", ""}
}

// CNIChecks says whether the CNI plugins klab pod add --cni runs are
// installed.
func CNIChecks() []Check {
	paths := cni.Paths()
	if missing := cni.Missing(paths, cni.Plugins...); len(missing) > 0 {
		return []Check{{"CNI plugins", Warn, fmt.Sprintf("%s not found in %s: 'klab pod add --cni' cannot run the real plugins (the default wiring does not need them)", strings.Join(missing, ", "), strings.Join(paths, ":")),
			"apt-get install containernetworking-plugins (or set KLAB_CNI_PATH to where bridge, host-local and portmap are)"}}
	}
	return []Check{{"CNI plugins", OK, strings.Join(cni.Plugins, ", ") + " found in " + strings.Join(paths, ":") + " (klab pod add --cni)", ""}}
}

// Sudo is "sudo " when this process is not root, "" when it is (a
// container, a root shell): the prefix of the klab commands klab suggests.
func Sudo() string {
	if os.Geteuid() == 0 {
		return ""
	}
	return "sudo "
}
