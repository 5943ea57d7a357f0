package topo

import (
	"testing"

	"github.com/klab-dev/klab/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }
