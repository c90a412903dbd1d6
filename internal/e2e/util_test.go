package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
)

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// execBinary runs the refresherd binary with args and returns its combined
// output.
func execBinary(ctx context.Context, t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, mustBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
