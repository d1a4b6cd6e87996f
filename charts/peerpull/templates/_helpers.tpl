{{/* Base name of every object: the release name, with the chart name unless it already has it. */}}
{{- define "peerpull.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "peerpull.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "peerpull.selectorLabels" -}}
app.kubernetes.io/name: {{ include "peerpull.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "peerpull.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "peerpull.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "peerpull.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "peerpull.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "peerpull.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "peerpull.clusterName" -}}
{{- default .Release.Name .Values.clusterName -}}
{{- end -}}

{{- define "peerpull.clusterKeySecret" -}}
{{- default (printf "%s-cluster-key" (include "peerpull.fullname" .)) .Values.clusterKey.existingSecret -}}
{{- end -}}

{{/* The headless Service's DNS name, resolved by every node to find the others. */}}
{{- define "peerpull.bootstrapDns" -}}
{{- printf "%s-p2p.%s.svc.%s" (include "peerpull.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* Mirror targets after the node's own endpoint: the NodePort fallback first, then extras. */}}
{{- define "peerpull.mirrorTargets" -}}
{{- $t := list -}}
{{- if .Values.registry.nodePort.enabled -}}
{{- $t = append $t (printf "http://$(PEERPULL_NODE_IP):%d" (int .Values.registry.nodePort.port)) -}}
{{- end -}}
{{- $t = concat $t .Values.mirror.extraTargets -}}
{{- join "," $t -}}
{{- end -}}

{{/*
Environment of the peerpull containers. The downward-API variables come first, so later values
can refer to them as $(PEERPULL_NODE_IP). Named values are merged with .Values.env (which wins)
and written in sorted order, each name once.
*/}}
{{- define "peerpull.env" -}}
- name: PEERPULL_NODE_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
- name: PEERPULL_ADVERTISE_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- $e := dict
  "PEERPULL_REGISTRY_ADDR" (printf ":%d" (int .Values.registry.port))
  "PEERPULL_METRICS_ADDR" (printf ":%d" (int .Values.metrics.port))
  "PEERPULL_P2P_ADDR" (printf ":%d" (int .Values.p2p.port))
  "PEERPULL_CONTAINERD_SOCK" .Values.containerd.socket
  "PEERPULL_CONTAINERD_NAMESPACE" .Values.containerd.namespace
  "PEERPULL_CONTENT_PATH" .Values.containerd.contentPath
  "PEERPULL_CONTAINERD_CONFIG_PATH" .Values.containerd.configPath
  "PEERPULL_CONTAINERD_CONFIG_FILE" (printf "/host%s" .Values.containerd.configFile)
  "PEERPULL_MIRRORED_REGISTRIES" (join "," .Values.mirror.registries)
  "PEERPULL_MIRROR_TARGETS" (include "peerpull.mirrorTargets" .)
  "PEERPULL_RESOLVE_TAGS" (toString .Values.mirror.resolveTags)
  "PEERPULL_KEEP_EXISTING_HOSTS" (toString .Values.mirror.keepExistingHosts)
  "PEERPULL_MIRROR_DIAL_TIMEOUT" .Values.mirror.dialTimeout
  "PEERPULL_BOOTSTRAP_DNS" (join "," (prepend .Values.p2p.extraBootstrapDns (include "peerpull.bootstrapDns" .)))
  "PEERPULL_MAX_CONNECTIONS" (toString (int .Values.p2p.maxConnections))
  "PEERPULL_CLUSTER" (include "peerpull.clusterName" .)
  "PEERPULL_DATA_DIR" "/var/lib/peerpull"
  "PEERPULL_LOG_LEVEL" .Values.logLevel
  "PEERPULL_DEFAULT_REGISTRY" .Values.defaultRegistry
-}}
{{- if .Values.p2p.dnsServers -}}
{{- $_ := set $e "PEERPULL_DNS_SERVERS" (join "," .Values.p2p.dnsServers) -}}
{{- end -}}
{{- if .Values.clusterKey.enabled -}}
{{- $_ := set $e "PEERPULL_CLUSTER_KEY_FILE" (printf "/etc/peerpull/cluster-key/%s" .Values.clusterKey.secretKey) -}}
{{- end -}}
{{- range $k, $v := .Values.env -}}
{{- if or (eq $k "PEERPULL_NODE_IP") (eq $k "PEERPULL_ADVERTISE_IP") -}}
{{- fail (printf "env.%s is set from the downward API; it cannot be overridden" $k) -}}
{{- end -}}
{{- $_ := set $e $k (toString $v) -}}
{{- end -}}
{{- range $k := keys $e | sortAlpha }}
- name: {{ $k }}
  value: {{ get $e $k | quote }}
{{- end -}}
{{- end -}}

{{/*
The cluster key: the given value, else the one already in the cluster (so upgrades keep it),
else a new random one (64 hex characters). Memoised so the Secret and the pod checksum agree.
*/}}
{{- define "peerpull.clusterKeyValue" -}}
{{- if not (hasKey .Values.clusterKey "_resolved") -}}
{{- $key := .Values.clusterKey.value -}}
{{- if $key -}}
{{- if not (regexMatch "^[0-9a-fA-F]{64}$" $key) -}}
{{- fail "clusterKey.value must be 64 hex characters (openssl rand -hex 32)" -}}
{{- end -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "peerpull.clusterKeySecret" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data .Values.clusterKey.secretKey) -}}
{{- $key = get $existing.data .Values.clusterKey.secretKey | b64dec -}}
{{- else -}}
{{- $key = randAlphaNum 64 | sha256sum -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values.clusterKey "_resolved" $key -}}
{{- end -}}
{{- get .Values.clusterKey "_resolved" -}}
{{- end -}}
