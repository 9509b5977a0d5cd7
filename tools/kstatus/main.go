// kstatus prints how GitOps tools judge Kubernetes objects, computed by their own code:
//
//   - status: kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the library kubectl-
//     style tools, kpt and cli-utils appliers use;
//   - flux: Flux's fork of kstatus (github.com/fluxcd/cli-utils), what kustomize-controller
//     and helm-controller wait for when no healthCheckExprs apply;
//   - fluxExprs (with -flux FILE): Flux's own evaluator (github.com/fluxcd/pkg/runtime/cel)
//     of the healthCheckExprs entry in FILE (a Flux Kustomization) for the object's kind.
//
// It reads one object, or a List (`kubectl get -o json` output), as JSON on stdin and
// writes one JSON line per object. Each status is the library's own word (InProgress,
// Failed, Current, Terminating, Unknown). tests/e2e/test_gitops_e2e.py runs it on real
// PushTasks; devstack/kstatus.py builds it into ~/.cache/pushtask/.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	fluxstatus "github.com/fluxcd/cli-utils/pkg/kstatus/status"
	fluxcel "github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type line struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Status    string `json:"status"`
	Message   string `json:"message"`
	Flux      string `json:"flux"`
	FluxExprs string `json:"fluxExprs,omitempty"`
}

func main() {
	fluxFile := flag.String("flux", "", "a Flux Kustomization whose healthCheckExprs to evaluate")
	flag.Parse()
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(raw); err != nil {
		fail(err)
	}
	items := []unstructured.Unstructured{obj}
	if obj.IsList() {
		list, err := obj.ToList()
		if err != nil {
			fail(err)
		}
		items = list.Items
	}
	evaluators := map[string]*fluxcel.StatusEvaluator{}
	out := json.NewEncoder(os.Stdout)
	for i := range items {
		u := &items[i]
		res, err := status.Compute(u)
		if err != nil {
			fail(fmt.Errorf("%s/%s: %w", u.GetNamespace(), u.GetName(), err))
		}
		fres, err := fluxstatus.Compute(u)
		if err != nil {
			fail(fmt.Errorf("%s/%s: flux: %w", u.GetNamespace(), u.GetName(), err))
		}
		l := line{u.GetName(), u.GetNamespace(), res.Status.String(), res.Message, fres.Status.String(), ""}
		if *fluxFile != "" {
			key := u.GetAPIVersion() + "/" + u.GetKind()
			e, ok := evaluators[key]
			if !ok {
				e, err = fluxEvaluator(*fluxFile, u.GetAPIVersion(), u.GetKind())
				if err != nil {
					fail(err)
				}
				evaluators[key] = e
			}
			l.FluxExprs = fluxStatus(e, u)
		}
		if err := out.Encode(l); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(1)
}
