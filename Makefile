.PHONY: test demo bench bench-quick build

# Format, vet, staticcheck and race tests against throwaway PostgreSQL.
test:
	bash scripts/test.sh

demo:
	go run ./cmd/refresherd-demo

bench:
	go run ./bench/cmd/bench -size full

bench-quick:
	go run ./bench/cmd/bench -size quick

build:
	go build -o bin/refresherd ./cmd/refresherd
