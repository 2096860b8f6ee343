//! The `dmemu` command; invoked as `dmsetup` or `blockdev` (a symlink), it is those.
fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let base = args
        .first()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or("dmemu")
        .to_string();
    let code = match (base.as_str(), args.get(1).map(String::as_str)) {
        ("dmsetup", _) => dmemu::dmsetup::client::main("dmsetup", args.split_off(1)),
        ("blockdev", _) => dmemu::dmsetup::blockdev::main(&args[1..]),
        (_, Some("dmsetup")) => dmemu::dmsetup::client::main("dmsetup", args.split_off(2)),
        (_, Some("blockdev")) => dmemu::dmsetup::blockdev::main(&args[2..]),
        (_, Some("__dmsetup-host")) => match args.get(2) {
            Some(dir) => dmemu::dmsetup::host::serve(std::path::Path::new(dir)),
            None => 2,
        },
        _ => dmemu::cli::run(),
    };
    std::process::exit(code);
}
