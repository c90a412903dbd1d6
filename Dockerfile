# syntax=docker/dockerfile:1
#
# refresherd container image: a static binary on distroless, running as non-root (65532).
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t refresherd .
#   docker run --rm -p 9481:9481 -e DATABASE_URL=postgres://... refresherd
#
# The image ships the repository's config.yaml at /etc/refresherd/config.yaml; in Kubernetes the
# ConfigMap is mounted over it (deploy/k8s).

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
# Dependencies first, so source edits reuse the module cache layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/refresherd ./cmd/refresherd

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="refresherd" \
      org.opencontainers.image.description="Keeps PostgreSQL materialized views fresh" \
      org.opencontainers.image.source="https://github.com/refresherd/refresherd" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/refresherd /refresherd
COPY config.yaml /etc/refresherd/config.yaml
USER 65532:65532
# /metrics, /healthz, /readyz, /status
EXPOSE 9481
ENTRYPOINT ["/refresherd"]
CMD ["run", "--config", "/etc/refresherd/config.yaml"]
