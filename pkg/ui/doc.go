// Package ui is klab's live web view of a lab: a page served on a local
// address that draws the lab's topology as the kernel has it (pkg/topo,
// pkg/graph's SVG), redraws it within a second when nodes, pods or
// Services come and go (the state file and the kernel are polled, changes
// pushed to the page with Server-Sent Events), shows a node's or pod's
// kernel state on click (links, addresses, routes, neighbours, FDB, its
// iptables rules) and animates a journey probe hop by hop.
//
// klab runs as root, so the page is guarded the way Jupyter guards its
// notebooks: it listens on 127.0.0.1 unless told otherwise, every request
// carries a random token (in the URL once, then in an HttpOnly SameSite
// cookie), a loopback listener accepts only loopback Host names (no DNS
// rebinding), and the one POST — running a journey probe, the only thing
// the page can make klab do — also needs a same-origin request (Origin or
// Sec-Fetch-Site), so another site open in the same browser cannot start
// it (CSRF). Nothing the page asks for changes the lab: the topology and
// object views read, the probe sends one packet and captures it. The page
// and its script are embedded in the binary and use no framework and no
// CDN, so the view works on an offline classroom VM.
package ui
