package refresh

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/refresherd/refresherd/config"
)

// TestEnsureTriggersFollowsModes switches the views on shared tables between
// modes: each table ends with exactly the union of what its views need,
// where the notify trigger (which appends to the change log too) covers a
// changelog view's need.
func TestEnsureTriggersFollowsModes(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	mustExec(t, pool, `CREATE TABLE public.other (k int NOT NULL, v int NOT NULL)`)
	other := config.QualifiedName{Schema: "public", Name: "other"}
	view := func(name, mode string, srcs ...config.QualifiedName) config.View {
		v := testView(t, "public."+name, sumQuery)
		v.ChangeDetection = mode
		if len(srcs) > 0 {
			v.Sources = srcs
		}
		return *v
	}
	const (
		notify    = "refresherd_notify"
		changelog = "refresherd_changelog"
	)
	steps := []struct {
		name        string
		views       []config.View
		src, others []string
	}{
		{"notify", []config.View{view("a", config.DetectNotify)}, []string{notify}, nil},
		{"notify again (idempotent)", []config.View{view("a", config.DetectNotify)}, []string{notify}, nil},
		{"changelog", []config.View{view("a", config.DetectChangelog)}, []string{changelog}, nil},
		{"stats", []config.View{view("a", config.DetectStats)}, nil, nil},
		{"none", []config.View{view("a", config.DetectNone)}, nil, nil},
		{"a changelog view", []config.View{view("b", config.DetectChangelog, srcName, other)}, []string{changelog}, []string{changelog}},
		{"notify and changelog views on one table: the notify trigger serves both", []config.View{
			view("a", config.DetectNotify), view("b", config.DetectChangelog, srcName, other),
		}, []string{notify}, []string{changelog}},
		{"a stats view besides them changes nothing", []config.View{
			view("a", config.DetectNotify), view("b", config.DetectChangelog, srcName, other), view("c", config.DetectStats, other),
		}, []string{notify}, []string{changelog}},
		{"the notify view goes", []config.View{view("b", config.DetectChangelog, srcName, other)}, []string{changelog}, []string{changelog}},
		{"no view lists the tables any more", []config.View{view("c", config.DetectNone, other)}, nil, nil},
	}
	for _, s := range steps {
		if err := EnsureTriggers(ctx, pool, s.views); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := daemonTriggers(t, pool, "public.src"); !slices.Equal(got, s.src) {
			t.Errorf("%s: public.src has %v, want %v", s.name, got, s.src)
		}
		if got := daemonTriggers(t, pool, "public.other"); !slices.Equal(got, s.others) {
			t.Errorf("%s: public.other has %v, want %v", s.name, got, s.others)
		}
	}

	// EnsureView only adds: a changelog view's set-up leaves the notify
	// trigger another view may need, and needs no trigger of its own beside
	// it; EnsureTriggers replaces it if no view needs it.
	if err := EnsureTriggers(ctx, pool, []config.View{view("a", config.DetectNotify)}); err != nil {
		t.Fatal(err)
	}
	cl := view("b", config.DetectChangelog)
	if _, err := EnsureView(ctx, pool, &cl); err != nil {
		t.Fatal(err)
	}
	if got := daemonTriggers(t, pool, "public.src"); !slices.Equal(got, []string{notify}) {
		t.Errorf("after EnsureView of a changelog view: %v, want the notify trigger only", got)
	}
	// A notify view's set-up on a table with the changelog trigger adds its
	// own: the changelog trigger neither rings nor may be dropped by a set-up.
	mustExec(t, pool, `CREATE TABLE public.third (k int NOT NULL, v int NOT NULL)`)
	third := config.QualifiedName{Schema: "public", Name: "third"}
	if err := EnsureTriggers(ctx, pool, []config.View{view("d", config.DetectChangelog, third)}); err != nil {
		t.Fatal(err)
	}
	nt := view("e", config.DetectNotify, third)
	if _, err := EnsureView(ctx, pool, &nt); err != nil {
		t.Fatal(err)
	}
	if got := daemonTriggers(t, pool, "public.third"); !slices.Equal(got, []string{changelog, notify}) {
		t.Errorf("after EnsureView of a notify view: %v, want both until EnsureTriggers", got)
	}
	if err := EnsureTriggers(ctx, pool, []config.View{nt, view("d", config.DetectChangelog, third)}); err != nil {
		t.Fatal(err)
	}
	if got := daemonTriggers(t, pool, "public.third"); !slices.Equal(got, []string{notify}) {
		t.Errorf("after EnsureTriggers: %v, want the notify trigger only", got)
	}
	st := view("c", config.DetectStats)
	if _, err := EnsureView(ctx, pool, &st); err != nil {
		t.Fatal(err)
	}
	if err := EnsureTriggers(ctx, pool, []config.View{cl, st}); err != nil {
		t.Fatal(err)
	}
	if got := daemonTriggers(t, pool, "public.src"); !slices.Equal(got, []string{changelog}) {
		t.Errorf("after EnsureTriggers: %v, want only the changelog trigger", got)
	}
}

// TestEnsureTriggersLeavesOthersAlone: a user's trigger that happens to bear
// our name is neither replaced nor dropped, and a missing table does not
// stop the other tables from being handled.
func TestEnsureTriggersLeavesOthersAlone(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	mustExec(t, pool, `CREATE FUNCTION public.audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$`)
	mustExec(t, pool, `CREATE TABLE public.audited (k int NOT NULL, v int NOT NULL)`)
	mustExec(t, pool, `CREATE TRIGGER refresherd_notify AFTER INSERT ON public.audited FOR EACH STATEMENT EXECUTE FUNCTION public.audit()`)
	audited := config.QualifiedName{Schema: "public", Name: "audited"}
	missing := config.QualifiedName{Schema: "public", Name: "missing"}

	v := testView(t, "public.a", sumQuery)
	v.Sources = []config.QualifiedName{missing, audited, srcName}
	err := EnsureTriggers(ctx, pool, []config.View{*v})
	if err == nil || !strings.Contains(err.Error(), "source table public.missing does not exist") ||
		!strings.Contains(err.Error(), "does not call") {
		t.Fatalf("err = %v; want the missing table and the foreign trigger named", err)
	}
	if got := daemonTriggers(t, pool, "public.src"); !slices.Equal(got, []string{"refresherd_notify"}) {
		t.Errorf("public.src has %v despite the other tables' errors", got)
	}
	// No view wants it: still not ours to drop.
	if err := EnsureTriggers(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	if got := daemonTriggers(t, pool, "public.audited"); !slices.Equal(got, []string{"refresherd_notify"}) {
		t.Errorf("the user's trigger was dropped: %v", got)
	}
	if got := daemonTriggers(t, pool, "public.src"); len(got) != 0 {
		t.Errorf("public.src keeps %v with no view", got)
	}
}
