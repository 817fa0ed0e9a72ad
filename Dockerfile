# Sluice in a container: `docker build -t sluice .`, then see deploy/.
#
# The image holds the binary only. Mount the pipelines directory at
# /etc/sluice (read-only is fine) and give the SQLite ledger a volume at
# /var/lib/sluice, or point `storage_env` at Postgres (deploy/compose.yaml).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice \
 && strip target/release/sluice

# glibc and libgcc, no shell, no package manager; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
WORKDIR /var/lib/sluice
VOLUME ["/var/lib/sluice"]
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["serve", "/etc/sluice", "--listen", "0.0.0.0:8080"]
