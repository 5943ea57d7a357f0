package policy

// NetRanges exposes netRanges to the external tests.
var NetRanges = netRanges
