# A small image holding only a static drawbridge-server binary.
#   docker build -t drawbridge .
#
# Build stage: Alpine's Rust targets musl and links statically by default, so the binary needs
# no libc at run time. Nothing else is required: protobuf is compiled by protox (no protoc),
# TLS is rustls with ring (no OpenSSL; ring's C and assembly build with musl-dev's toolchain).
FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p drawbridge-server \
    && cp target/release/drawbridge-server /drawbridge-server \
    && mkdir /empty-data

# Run stage: distroless "static" (no shell, no libc; CA certificates, tzdata and a nonroot
# user only). The data directory is owned by that user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /drawbridge-server /usr/local/bin/drawbridge-server
COPY --from=build --chown=65532:65532 /empty-data /data
USER 65532:65532
# 9292: client API (gRPC); 9293: raft between servers (client port + 1 by default).
EXPOSE 9292 9293
VOLUME /data
ENTRYPOINT ["/usr/local/bin/drawbridge-server"]
CMD ["--embedded-nats", "--data-dir", "/data"]
