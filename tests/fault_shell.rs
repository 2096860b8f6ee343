//! `dmemu shell` end to end: a dust device over an image file driven by a script on stdin,
//! with the kernel's message replies and EIO on bad blocks.

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn shell_script_drives_dust_over_an_image_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0x11u8; 1 << 20]).unwrap();
    let table = dir.path().join("dust.table");
    std::fs::write(&table, format!("0 2048 dust {} 0 4096\n", image.display())).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .args(["shell", "--table"])
        .arg(&table)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"message 0 addbadblock 3\nmessage 0 enable\nread 24 8\nread 16 8\n\
              message 0 queryblock 3\nwrite 24 8 34\nread 24 8\nmessage 0 listbadblocks\n\
              status\ntable\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("error: EIO: line 3: "), "{text}");
    assert_eq!(lines[1], "ok 11*4096");
    assert_eq!(lines[2], "dust_query_block: block 3 found in badblocklist");
    assert_eq!(lines[3], "ok");
    assert_eq!(lines[4], "ok 22*4096");
    assert_eq!(lines[5], "No blocks in badblocklist");
    let dev = image.display();
    assert_eq!(
        lines[6],
        format!("0 2048 dust {dev} fail_read_on_bad_block verbose")
    );
    assert_eq!(lines[7], format!("0 2048 dust {dev} 0 4096"));
    let disk = std::fs::read(&image).unwrap();
    assert_eq!(disk[3 * 4096], 0x22, "the write reached the image");
}
