package cluster

// Readiness probes: the kubelet's prober and the endpoints controller in
// one small loop. A pod applied with a readinessProbe starts unready; a
// background process of the lab (klab's server worker in readiness mode,
// living in the underlay namespace, stopped by destroy like every server)
// probes it from its node's namespace, as the kubelet does, every
// periodSeconds, and after failureThreshold failures (successThreshold
// successes) marks it unready (ready) through SetReady: the pod leaves (or
// joins) every Service's endpoints on every node at once.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/klab-dev/klab/pkg/netns"
	corev1 "k8s.io/api/core/v1"
)

// ReadinessProbe is a pod's readinessProbe, as klab runs it.
type ReadinessProbe struct {
	HTTPPath string `json:"httpPath,omitempty"` // an HTTP GET of this path; else a TCP connect
	Port     int    `json:"port"`
	Period   int    `json:"periodSeconds"`
	Failures int    `json:"failureThreshold"`
	Success  int    `json:"successThreshold"`
	Timeout  int    `json:"timeoutSeconds"`
}

// readinessOf converts a container's readinessProbe, resolving a named
// port against the pod's containerPorts; nil when the pod has none.
func readinessOf(p *corev1.Pod, ports []ContainerPort) (*ReadinessProbe, error) {
	for _, c := range p.Spec.Containers {
		pr := c.ReadinessProbe
		if pr == nil {
			continue
		}
		rp := &ReadinessProbe{Period: int(pr.PeriodSeconds), Failures: int(pr.FailureThreshold), Success: int(pr.SuccessThreshold), Timeout: int(pr.TimeoutSeconds)}
		var port string
		switch {
		case pr.HTTPGet != nil:
			rp.HTTPPath, port = pr.HTTPGet.Path, pr.HTTPGet.Port.String()
			if rp.HTTPPath == "" {
				rp.HTTPPath = "/"
			}
		case pr.TCPSocket != nil:
			port = pr.TCPSocket.Port.String()
		default:
			return nil, fmt.Errorf("container %s: klab runs HTTP and TCP readiness probes only", c.Name)
		}
		if n, err := strconv.Atoi(port); err == nil {
			rp.Port = n
		} else {
			for _, cp := range ports {
				if cp.Name == port {
					rp.Port = cp.Port
				}
			}
			if rp.Port == 0 {
				return nil, fmt.Errorf("container %s: readinessProbe port %q is not one of the pod's named containerPorts", c.Name, port)
			}
		}
		rp.Period, rp.Failures, rp.Success, rp.Timeout = max(rp.Period, 1), max(rp.Failures, 1), max(rp.Success, 1), max(rp.Timeout, 1)
		return rp, nil
	}
	return nil, nil
}

// Probe runs a pod's readiness probe once, from its node's namespace.
func (l *Lab) Probe(p *Pod) bool {
	rp := p.Readiness
	if rp == nil {
		return true
	}
	ok := false
	netns.Do(netns.Name(l.Name, p.Node), func() error {
		addr := net.JoinHostPort(p.IP.String(), strconv.Itoa(rp.Port))
		conn, err := net.DialTimeout("tcp4", addr, time.Duration(rp.Timeout)*time.Second)
		if err != nil {
			return nil
		}
		defer conn.Close()
		if rp.HTTPPath == "" {
			ok = true
			return nil
		}
		conn.SetDeadline(time.Now().Add(time.Duration(rp.Timeout) * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: kube-probe/klab\r\n\r\n", rp.HTTPPath, addr)
		status, err := bufio.NewReader(conn).ReadString('\n')
		if f := strings.Fields(status); err == nil && len(f) >= 2 {
			code, _ := strconv.Atoi(f[1])
			ok = code >= 200 && code < 400 // the kubelet's rule
		}
		return nil
	})
	return ok
}

// RunProber probes the readiness of every pod of a lab that has a probe,
// until ctx is done, and marks the pods whose result crossed its threshold
// ready or unready (under the lab lock, through SetReady).
func RunProber(ctx context.Context, stateDir, lab string) error {
	type count struct{ ok, fail int }
	counts := map[string]*count{}
	next := map[string]time.Time{}
	for {
		l, err := Load(stateDir, lab)
		if err != nil {
			return err
		}
		now := time.Now()
		for _, p := range l.Pods {
			if p.Readiness == nil || now.Before(next[p.Name]) {
				continue
			}
			next[p.Name] = now.Add(time.Duration(p.Readiness.Period) * time.Second)
			c := counts[p.Name]
			if c == nil {
				c = &count{}
				counts[p.Name] = c
			}
			if l.Probe(p) {
				c.ok, c.fail = c.ok+1, 0
			} else {
				c.ok, c.fail = 0, c.fail+1
			}
			var ready bool
			switch {
			case p.Unready && c.ok >= p.Readiness.Success:
				ready = true
			case !p.Unready && c.fail >= p.Readiness.Failures:
				ready = false
			default:
				continue
			}
			if err := setReady(stateDir, lab, p.Name, ready); err != nil {
				fmt.Printf("readiness of %s: %v\n", p.Name, err)
				continue
			}
			fmt.Printf("%s pod %s ready=%v\n", time.Now().Format(time.RFC3339), p.Name, ready)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func setReady(stateDir, lab, pod string, ready bool) error {
	c, err := Open(stateDir, lab, nil, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.SetReady(pod, ready)
}
