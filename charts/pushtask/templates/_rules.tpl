{{/* The alert groups of prometheusrule.yaml (also rendered alone for promtool's tests). */}}
{{- define "pushtask.ruleGroups" -}}
{{- $r := .Values.metrics.prometheusRule -}}
{{- $extra := $r.additionalLabels | default dict -}}
groups:
  - name: pushtask.campaigns
    rules:
      - alert: PushTaskRunFailed
        # Failed: the error budget is spent or the run hit a permanent error.
        expr: max by (namespace, task) (pushtask_task_phase{phase="Failed"}) == 1
        for: 1m
        labels:
          severity: {{ $r.severity.failed }}
          {{- with $extra }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: {{ `PushTask {{ $labels.namespace }}/{{ $labels.task }} failed` | quote }}
          description: {{ `The run failed; kubectl describe pt -n {{ $labels.namespace }} {{ $labels.task }} says why (status.message).` | quote }}
      - alert: PushTaskRunStalled
        # Started (and inside its send window) now and stalledMinutes ago, and no
        # recipient, audience row or result counted in between.
        expr: |-
          (
            max by (namespace, task) (pushtask_task_phase{phase="Started"}) == 1
            unless on (namespace, task) (max by (namespace, task) (pushtask_task_outside_window) == 1)
          )
          and on (namespace, task)
          (max by (namespace, task) (changes(pushtask_task_recipients{result!="pending"}[{{ $r.stalledMinutes }}m])) == 0)
          and on (namespace, task)
          (max by (namespace, task) (pushtask_task_phase{phase="Started"} offset {{ $r.stalledMinutes }}m) == 1)
        for: 1m
        labels:
          severity: {{ $r.severity.stalled }}
          {{- with $extra }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: {{ `PushTask {{ $labels.namespace }}/{{ $labels.task }} makes no progress` | quote }}
          description: {{ printf "Started, inside its send window, and no count moved for %v minutes: look at its workers (kubectl logs) and the store." $r.stalledMinutes | quote }}
      - alert: PushTaskSendingBelowAllocation
        # Delivering, allowed allocation/s, sending less than belowAllocationRatio of it:
        # a slow or failing receiver, too few workers, or a starved store.
        expr: |-
          (
            max by (namespace, task) (pushtask_task_rate_per_second)
            < {{ $r.belowAllocationRatio }} * max by (namespace, task) (pushtask_task_allocation_per_second)
          )
          and on (namespace, task) (max by (namespace, task) (pushtask_task_delivering) == 1)
          and on (namespace, task) (max by (namespace, task) (pushtask_task_phase{phase="Started"}) == 1)
          and on (namespace, task) (max by (namespace, task) (pushtask_task_recipients{result="pending"}) > 0)
        for: {{ $r.belowAllocationMinutes }}m
        labels:
          severity: {{ $r.severity.belowAllocation }}
          {{- with $extra }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: {{ `PushTask {{ $labels.namespace }}/{{ $labels.task }} sends far below its allocation` | quote }}
          description: {{ `Sending {{ $value | humanize }}/s for a while, well below the rate it may use: check the receiver's latency and errors, and the worker count.` | quote }}
      - alert: PushTaskWorkersLost
        # Fewer live workers (a fresh heartbeat in the store) than desired, or Reboot.
        expr: |-
          (
            max by (namespace, task) (pushtask_task_workers{state="desired"})
            - max by (namespace, task) (pushtask_task_workers{state="live"})
          ) > 0
          and on (namespace, task) (max by (namespace, task) (pushtask_task_phase{phase=~"Started|Reboot"}) == 1)
        for: {{ $r.workersLostMinutes }}m
        labels:
          severity: {{ $r.severity.workersLost }}
          {{- with $extra }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: {{ `PushTask {{ $labels.namespace }}/{{ $labels.task }} is missing {{ $value }} worker(s)` | quote }}
          description: {{ `Workers without a fresh heartbeat: kubectl get pods -n {{ $labels.namespace }} -l pushtask.dev/task={{ $labels.task }}.` | quote }}
      - alert: PushTaskStoreErrors
        # Workers retrying MongoDB calls (timeouts, no primary), or their circuit open.
        expr: |-
          sum by (namespace, pod) (rate(pushtask_worker_store_errors_total[5m])) > {{ $r.storeErrorsPerSecond }}
          or max by (namespace, pod) (pushtask_worker_store_circuit_open) == 1
        for: {{ $r.storeErrorsMinutes }}m
        labels:
          severity: {{ $r.severity.storeErrors }}
          {{- with $extra }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: {{ `PushTask worker {{ $labels.namespace }}/{{ $labels.pod }} gets store errors` | quote }}
          description: {{ `Workers wait out MongoDB with back-off and a circuit breaker (no recipient fails for it), but the run does not move meanwhile: check MongoDB.` | quote }}
  - name: pushtask.budget
    rules:
      - alert: PushTaskBudgetSaturated
        # Running tasks could use more than sendBudget: each runs below its own rate.
        expr: |-
          max without (instance, pod) (pushtask_send_budget_demand_per_second)
          >= {{ $r.budgetSaturation }} * max without (instance, pod) (pushtask_send_budget_per_second)
          and max without (instance, pod) (pushtask_send_budget_per_second) > 0
        for: {{ $r.budgetSaturatedMinutes }}m
        labels:
          severity: {{ $r.severity.budgetSaturated }}
          {{- with $extra }}{{ toYaml . | nindent 10 }}{{ end }}
        annotations:
          summary: PushTask send budget saturated
          description: {{ `The running tasks could use {{ $value | humanize }}/s, at or above the operator's sendBudget: tasks send below their rates. Raise sendBudget, or degrade a tier.` | quote }}
{{- end -}}
