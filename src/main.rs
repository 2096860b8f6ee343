//! The `dmemu` command.
fn main() {
    std::process::exit(dmemu::cli::run());
}
