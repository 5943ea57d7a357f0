# klab in a container: the static klab and klab-etcd (the control plane's
# etcd server) binaries on a small Debian image with what klab needs at run
# time (iptables; iproute2 for 'klab exec node1 -- ip route' and the tests'
# cross-checks) and the CNI plugins for --cni.
# See docs/containers.md for the docker run flags and why each is needed.
#
#   docker build -t klab .
#   docker run --rm --privileged klab run flannel-crossnode --yes

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /klab ./cmd/klab \
 && CGO_ENABLED=0 go build -trimpath -o /klab-etcd ./cmd/klab-etcd

FROM debian:bookworm-slim
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends iptables iproute2 containernetworking-plugins \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /klab /usr/local/bin/klab
# The control plane's etcd server (--control-plane etcd), found beside klab.
COPY --from=build /klab-etcd /usr/local/bin/klab-etcd
ENTRYPOINT ["klab"]
CMD ["doctor"]
