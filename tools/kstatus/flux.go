package main

// Flux's health check expressions (spec.healthCheckExprs of a Kustomization), evaluated
// by Flux's own code.

import (
	"context"
	"fmt"
	"os"

	"github.com/fluxcd/pkg/apis/kustomize"
	fluxcel "github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// fluxEvaluator reads a Flux Kustomization and returns Flux's own evaluator of its
// healthCheckExprs entry for the given apiVersion and kind.
func fluxEvaluator(path, apiVersion, kind string) (*fluxcel.StatusEvaluator, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ks struct {
		Spec struct {
			HealthCheckExprs []kustomize.CustomHealthCheck `json:"healthCheckExprs"`
		} `json:"spec"`
	}
	// Only spec.healthCheckExprs is read; the rest of the Kustomization is left alone.
	if err := yaml.Unmarshal(raw, &ks); err != nil {
		return nil, err
	}
	for _, c := range ks.Spec.HealthCheckExprs {
		if c.APIVersion == apiVersion && c.Kind == kind {
			return fluxcel.NewStatusEvaluator(&c.HealthCheckExpressions)
		}
	}
	return nil, fmt.Errorf("%s: no healthCheckExprs entry for %s %s", path, apiVersion, kind)
}

func fluxStatus(e *fluxcel.StatusEvaluator, u *unstructured.Unstructured) string {
	res, err := e.Evaluate(context.Background(), u)
	if err != nil {
		return "Error: " + err.Error()
	}
	return res.Status.String()
}
