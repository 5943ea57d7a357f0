// Package inspect reads the network state of a namespace back from the
// kernel — links, addresses, routes, neighbours, FDB entries — and renders
// it the way iproute2 would, one object per line.
//
// It is how `klab show` prints a node or pod, how the labs show "what this
// step created in the kernel" (the difference between a snapshot taken
// before and one taken after), and how tests compare the host namespace
// before and after the whole suite. Everything is read through netlink,
// never from klab's own state, so it shows what is really there.
package inspect
