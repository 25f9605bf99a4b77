# Builds a small image holding only the drawbridge-server binary.
# docker build -t drawbridge .
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p drawbridge-server

FROM debian:bookworm-slim
COPY --from=build /src/target/release/drawbridge-server /usr/local/bin/drawbridge-server
EXPOSE 9292 9293
VOLUME /data
ENTRYPOINT ["/usr/local/bin/drawbridge-server"]
CMD ["--embedded-nats", "--data-dir", "/data"]
