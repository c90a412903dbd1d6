package k8svalidate

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestDockerfile checks what the Kubernetes manifests rely on in the image (no Docker engine is
// needed): a non-root static image whose user matches runAsUser, the /refresherd entrypoint, and
// a default command that reads the config where the ConfigMap is mounted.
func TestDockerfile(t *testing.T) {
	df := string(readRepoFile(t, "Dockerfile"))
	var lines []string
	for _, l := range strings.Split(strings.ReplaceAll(df, "\\\n", " "), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	has := func(re string) bool {
		r := regexp.MustCompile(re)
		return slices.ContainsFunc(lines, r.MatchString)
	}
	for _, re := range []string{
		`^ARG GO_VERSION=1\.26$`,
		`^FROM (--platform=\S+ )?golang:\$\{GO_VERSION\} AS build$`,
		`CGO_ENABLED=0 .*go build -trimpath -ldflags "-s -w -X main\.version=\$\{VERSION\}"`,
		`^FROM gcr\.io/distroless/static-debian12:nonroot$`,
		`^USER 65532(:65532)?$`,
		`^EXPOSE 9481$`,
		`^ENTRYPOINT \["/refresherd"\]$`,
		`^CMD \["run", "--config", "` + configMount + `/config\.yaml"\]$`,
	} {
		if !has(re) {
			t.Errorf("Dockerfile: no line matches %s", re)
		}
	}
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "CMD ") {
		t.Errorf("Dockerfile: want CMD last, got %q", last)
	}
	di := string(readRepoFile(t, ".dockerignore"))
	for _, need := range []string{"go.mod", "go.sum", "config.yaml", "cmd/"} {
		for _, l := range strings.Split(di, "\n") {
			if l = strings.TrimSpace(l); l == need || l == strings.TrimSuffix(need, "/") {
				t.Errorf(".dockerignore excludes %s, which the build needs", need)
			}
		}
	}
}
