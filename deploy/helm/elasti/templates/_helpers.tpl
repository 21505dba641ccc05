{{- define "elasti.labels" -}}
app.kubernetes.io/part-of: elasti
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
