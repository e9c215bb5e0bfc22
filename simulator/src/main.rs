//! `eventide-simulator`: writes seeded IoT telemetry as NDJSON to stdout, a file, or
//! a Kafka topic (see `eventide_simulator::cli`).

fn main() -> std::process::ExitCode {
    eventide_simulator::cli::main(std::env::args_os())
}
