// Package cni runs the real CNI plugins — bridge, host-local and portmap,
// as packaged in Debian's containernetworking-plugins under /usr/lib/cni —
// the way kubelet and containerd do on a flannel node, through libcni
// (github.com/containernetworking/cni/libcni, v1.3.0).
//
// On a flannel node the runtime finds kube-flannel's conflist (a "flannel"
// plugin followed by portmap); the flannel plugin reads /run/flannel/subnet.env
// and delegates to the bridge plugin with a config it fills in from that file:
// the bridge named cni0 as the gateway, the node's subnet for host-local, the
// cluster network as a route, flannel's MTU, and no masquerade when flanneld
// masquerades itself (flannel-io/cni-plugin, flannel_linux.go, doCmdAdd and
// getDelegateIPAM). The flannel binary is not packaged here, so DelegateList
// writes that expanded chain — bridge then portmap — and Runner executes it
// with the CNI_* environment, from a thread inside the node's namespace
// (plugins act on the namespace they are started in, the container's is
// CNI_NETNS), with libcni's result cache under the lab's state.
package cni
