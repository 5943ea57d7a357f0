package nft

import (
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
)

// TestMain fails the package if its tests changed the host's network
// namespace (see testutil.Main).
func TestMain(m *testing.M) { testutil.Main(m) }
