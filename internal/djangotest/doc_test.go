package djangotest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refresherd/refresherd/internal/daemontest"
)

// docFiles maps the Python code blocks of docs/django.md, named by their
// first line ("# app/models.py"), to the project files the other tests run.
var docFiles = map[string]string{
	"app/models.py":                       "app/models.py",
	"app/freshness.py":                    "app/freshness.py",
	"settings.py":                         "project/settings.py",
	"project/testrunner.py":               "project/testrunner.py",
	"conftest.py":                         "pytest_tests/conftest.py",
	"app/migrations/0002_widen_amount.py": "variants/widen-amount-drop/0002_widen_amount.py",
	"app/migrations/0003_drop_chargesummary_table.py": "variants/managed-history/0003_drop_chargesummary_table.py",
}

// TestDocMatchesProject: the code docs/django.md shows is the code these
// tests run. Each top-level piece of such a block (pieces are separated by
// two blank lines, as Python's style has it) appears verbatim in its file,
// so the doc may leave out parts (the other models, a generated header) but
// not differ.
func TestDocMatchesProject(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join(daemontest.ModuleRoot(), "docs", "django.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := pythonBlocks(string(doc))
	for name, file := range docFiles {
		body, ok := blocks[name]
		if !ok {
			t.Errorf("docs/django.md has no python block starting with %q", "# "+name)
			continue
		}
		src, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		for _, piece := range strings.Split(body, "\n\n\n") {
			if piece = strings.Trim(piece, "\n"); piece != "" && !strings.Contains(string(src), piece) {
				t.Errorf("docs/django.md's %s differs from testdata/%s; the doc has:\n%s", name, file, piece)
			}
		}
	}
}

// pythonBlocks returns the unindented ```python blocks of a Markdown text
// whose first line is a "# name" comment, by name, without that line.
func pythonBlocks(md string) map[string]string {
	blocks := map[string]string{}
	lines := strings.Split(md, "\n")
	for i := 0; i < len(lines); i++ {
		if lines[i] != "```python" || i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "# ") {
			continue
		}
		name := strings.TrimPrefix(lines[i+1], "# ")
		var body []string
		for i += 2; i < len(lines) && lines[i] != "```"; i++ {
			body = append(body, lines[i])
		}
		blocks[name] = strings.Join(body, "\n")
	}
	return blocks
}
