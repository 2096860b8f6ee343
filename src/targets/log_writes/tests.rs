use super::format::{flags_str, DISCARD, FLUSH, FUA, MARK, METADATA};
use super::LogWritesArgs;
use crate::table::Table;

#[test]
fn flags_print_as_replay_log_prints_them() {
    assert_eq!(flags_str(0), "NONE");
    assert_eq!(flags_str(FLUSH | FUA), "FLUSH|FUA");
    assert_eq!(flags_str(DISCARD), "DISCARD");
    assert_eq!(flags_str(MARK), "MARK");
    assert_eq!(flags_str(FLUSH | FUA | METADATA), "FLUSH|FUA|UNKNOWN.0x10");
    assert_eq!(flags_str(METADATA), "UNKNOWN.0x10");
}

#[test]
fn args_need_two_devices_and_drop_the_rest() {
    let t = Table::parse("0 8 log-writes a.img b.img more words").unwrap();
    assert_eq!(
        t.to_text(Default::default()),
        "0 8 log-writes a.img b.img\n"
    );
    for bad in ["0 8 log-writes", "0 8 log-writes a.img"] {
        let e = Table::parse(bad).unwrap_err().to_string();
        assert!(e.ends_with("Invalid argument count"), "{bad}: {e}");
    }
    assert_eq!(LogWritesArgs::TYPE, "log-writes");
}
