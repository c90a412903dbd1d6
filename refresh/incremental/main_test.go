package incremental

import (
	"testing"

	"github.com/refresherd/refresherd/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
