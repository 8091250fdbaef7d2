{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "deepdetect-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name when it already contains the chart name (so `helm install deepdetect-operator`
gives the same object names as the kustomize manifests), else RELEASE-CHART.
*/}}
{{- define "deepdetect-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "deepdetect-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deepdetect-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "deepdetect-operator.labels" -}}
{{ include "deepdetect-operator.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: deepdetect
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "deepdetect-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "deepdetect-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "deepdetect-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "deepdetect-operator.serverImage" -}}
{{- printf "%s:%s" .Values.serverImage.repository (default .Chart.AppVersion .Values.serverImage.tag) }}
{{- end }}

{{/*
RBAC rules the operator needs inside a namespace: exactly the API calls of the reconciler and kopf.
Kept identical to manifests/base/rbac/cluster-role.yaml (tests/packaging/test_chart.py and test_rbac.py).
*/}}
{{- define "deepdetect-operator.namespacedRules" -}}
- apiGroups: ["deepdetect.io"]
  resources: ["deepdetectservices"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["deepdetect.io"]
  resources: ["deepdetectservices/status"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Cluster-wide mode adds the one cluster-scoped call kopf makes: watching CRDs. */}}
{{- define "deepdetect-operator.clusterRules" -}}
{{ include "deepdetect-operator.namespacedRules" . }}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
