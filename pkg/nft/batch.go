package nft

import (
	"fmt"
	"strings"
	"sync"

	"github.com/google/nftables"

	"github.com/klab-dev/klab/pkg/netns"
)

// encodeMu serialises encoding: google/nftables v0.3 numbers new sets
// (named and anonymous) from one unsynchronised package variable
// (set.go allocSetID), so two nodes' transactions encoded at once race.
// The kernel work (Flush) runs in parallel.
var encodeMu sync.Mutex

// Batch is one nf_tables transaction in one namespace: changes to several
// tables (kube-proxy's and flannel's) and tables deleted, sent as ONE
// netlink batch (one commit: all of it or none). It is the payload of a
// plan.NFT operation: Text is its `nft -f` equivalent, Apply runs it over
// netlink without any nft binary.
type Batch struct {
	Changes   []*Change
	DelTables []string // ip tables removed if present (mode switch, destroy)
}

// Empty reports whether the batch changes nothing.
func (b *Batch) Empty() bool {
	for _, c := range b.Changes {
		if !c.Empty() {
			return false
		}
	}
	return len(b.DelTables) == 0
}

// Text is the batch as `nft -f` input. A full change first adds and deletes
// its table ("add" makes the delete safe when there is none), as the
// netlink batch does.
func (b *Batch) Text() string {
	var s strings.Builder
	for _, t := range b.DelTables {
		s.WriteString("add table " + TableFamily + " " + t + "\ndelete table " + TableFamily + " " + t + "\n")
	}
	for _, c := range b.Changes {
		if c.Empty() {
			continue
		}
		if c.Full != nil {
			s.WriteString("add table " + c.Family + " " + c.Table + "\ndelete table " + c.Family + " " + c.Table + "\n")
		}
		s.WriteString(c.Text())
	}
	return s.String()
}

// Apply sends the batch to the named namespace's kernel in one transaction.
func (b *Batch) Apply(nsName string) error {
	if b.Empty() {
		return nil
	}
	h, err := netns.Open(nsName)
	if err != nil {
		return err
	}
	defer h.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)), nftables.WithSockOptions(bigSendBuffer))
	if err != nil {
		return fmt.Errorf("nftables in namespace %s: %w", nsName, err)
	}
	for _, name := range b.DelTables {
		t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: name}
		conn.AddTable(t)
		conn.DelTable(t)
	}
	encodeMu.Lock()
	for _, ch := range b.Changes {
		if ch.Empty() {
			continue
		}
		if ch.Family != TableFamily {
			encodeMu.Unlock()
			return fmt.Errorf("table family %q is not supported (only ip)", ch.Family)
		}
		e := &encoder{conn: conn, table: &nftables.Table{Family: nftables.TableFamilyIPv4, Name: ch.Table}, sets: map[string]*nftables.Set{}}
		if err := e.change(ch); err != nil {
			encodeMu.Unlock()
			return fmt.Errorf("encode nftables change for namespace %s: %w", nsName, err)
		}
	}
	encodeMu.Unlock()
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables transaction in namespace %s: %w", nsName, err)
	}
	return nil
}
