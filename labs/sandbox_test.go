package labs

import (
	"strings"
	"testing"
)

const sandboxLab = `---
name: sb-lint
title: t
summary: s
time: 5m
---

## Step

` + "```klab" + `
klab node add node1
klab exec node1 -- touch /etc/klab-was-here
klab exec node1 -- touch /tmp/fine /run/flannel/ok
klab exec node1 -- nsenter -t 1 -n ip link add x type dummy
klab exec node1 -- sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward; echo h >/proc/sysrq-trigger'
klab exec node1 -- sysctl -w net.ipv4.ip_forward=1
klab exec node1 -- sysctl -w kernel.panic=1
klab exec node1 -- ip netns exec other ip link
klab exec node1 -- timeout 5 modprobe dummy
klab exec node1 -- dd if=/dev/zero of=/dev/sda count=1
klab exec node1 -- cp /etc/hosts /usr/local/hosts
klab exec node1 -- sh -c 'ip route 2>&1 >/dev/null | tee /tmp/x'
klab exec node1 -- ip link set eth9 netns 1
klab serve node1 --port 80
` + "```" + `

` + "```klab privileged" + `
klab exec node1 -- mount -t tmpfs none /mnt
` + "```" + `

` + "```check" + `
klab exec node1 -- ip route
` + "```" + `
`

func TestSandboxProblems(t *testing.T) {
	l, err := Parse("sb.md", []byte(sandboxLab))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range SandboxProblems(l) {
		got = append(got, e.Error())
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{
		"sb.md:12: klab exec node1 -- touch /etc/klab-was-here: it writes /etc/klab-was-here",
		"sb.md:14: klab exec node1 -- nsenter -t 1 -n ip link add x type dummy: it runs nsenter",
		"sb.md:15: klab exec node1 -- sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward; echo h >/proc/sysrq-trigger': it writes /proc/sysrq-trigger",
		"sb.md:17: klab exec node1 -- sysctl -w kernel.panic=1: it sets kernel.panic",
		"sb.md:18: klab exec node1 -- ip netns exec other ip link: it runs ip netns exec",
		"sb.md:19: klab exec node1 -- timeout 5 modprobe dummy: it runs modprobe",
		"sb.md:20: klab exec node1 -- dd if=/dev/zero of=/dev/sda count=1: it writes /dev/sda",
		"sb.md:21: klab exec node1 -- cp /etc/hosts /usr/local/hosts: it writes /usr/local/hosts",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("missing %q in:\n%s", want, all)
		}
	}
	if len(got) != 8 {
		t.Errorf("%d problems, want 8:\n%s", len(got), all)
	}
	if strings.Contains(all, "mount") {
		t.Errorf("a privileged block's command was reported:\n%s", all)
	}
	s := Inside(l)
	if s.Commands != 14 || s.Servers != 1 || s.Privileged != 1 {
		t.Errorf("Inside = %+v, want 14 commands, 1 server, 1 privileged", s)
	}
	if !strings.HasPrefix(s.ProgramList(), "ip ×3, sh ×2, sysctl ×2, touch ×2") {
		t.Errorf("ProgramList = %q", s.ProgramList())
	}
	if pb := l.PrivilegedBlocks(); len(pb) != 1 || pb[0].Line != 27 || !pb[0].Commands[0].Privileged {
		t.Errorf("PrivilegedBlocks = %+v", pb)
	}
}

// Every shipped lab runs sandboxed unchanged: lint finds nothing in them.
func TestShippedLabsSandboxClean(t *testing.T) {
	for _, n := range Names() {
		l, err := Load(n)
		if err != nil {
			t.Fatal(err)
		}
		if errs := SandboxProblems(l); len(errs) > 0 {
			t.Errorf("%s: %v", n, errs)
		}
	}
}

func TestLintRefusesHostFiles(t *testing.T) {
	src := strings.Replace(sandboxLab, "klab node add node1\n", "klab node add node1 --script /etc/cron.d/x\nklab trace node1:eth0 --pcap /etc/x.pcapng\nklab exec --sandbox=false node1 -- true\n", 1)
	l, err := Parse("sb.md", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	err = Lint(l, nil)
	for _, want := range []string{"sb.md:11: --script in a lab command", "sb.md:12: --pcap in a lab command", "sb.md:13: --sandbox=false in a lab command"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Lint: %v; want %q", err, want)
		}
	}
}
