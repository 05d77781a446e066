//! Every way a package is refused at publish, each with a crafted package, through the HTTP
//! API of a real management process; and a zip package accepted.

use std::io::Write;

use tar::EntryType::{Regular, Symlink};
use warren_tests::*;

fn manifest(name: &str) -> String {
    format!("name = \"{name}\"\nruntime = \"echo\"\n")
}

/// Pseudo-random bytes: incompressible, so packed size ~ unpacked size.
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn refused(m: &Management, pkg: Vec<u8>, status: u16, needle: &str, name: &str) {
    let (got, v) = m.publish_bytes(pkg).await;
    let msg = v["error"]["message"].as_str().unwrap_or_default().to_string();
    assert_eq!(got, status, "{needle}: {v}");
    assert!(msg.contains(needle), "expected {needle:?} in {msg:?}");
    let (got, _) = m.get(&format!("/api/functions/{name}")).await;
    assert_eq!(got, 404, "{needle}: nothing may be stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_packages_are_refused_with_a_clear_error_before_anything_is_stored() {
    require_services();
    let m = Management::start_with(
        &pg_url(),
        &["--max-package-bytes", "1000000", "--max-unpacked-bytes", "300000", "--max-package-ratio", "200"],
    )
    .await;
    let n = || unique("pkg");

    let name = n();
    let good = manifest(&name);
    refused(
        &m,
        crafted_tar_gz(&[("function.toml", good.as_bytes(), Regular, ""), ("../x", b"x", Regular, "")]),
        400,
        "outside the package folder",
        &name,
    )
    .await;

    let name = n();
    let good = manifest(&name);
    refused(
        &m,
        crafted_tar_gz(&[("function.toml", good.as_bytes(), Regular, ""), ("/etc/cron.d/x", b"x", Regular, "")]),
        400,
        "outside the package folder",
        &name,
    )
    .await;

    let name = n();
    let good = manifest(&name);
    refused(
        &m,
        crafted_tar_gz(&[
            ("function.toml", good.as_bytes(), Regular, ""),
            ("passwd", b"", Symlink, "../../../etc/passwd"),
        ]),
        400,
        "is a link",
        &name,
    )
    .await;

    // A link in a zip (unix mode S_IFLNK).
    let name = n();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("function.toml", zip::write::SimpleFileOptions::default()).unwrap();
    zip.write_all(manifest(&name).as_bytes()).unwrap();
    zip.add_symlink("escape", "../../etc/passwd", zip::write::SimpleFileOptions::default()).unwrap();
    refused(&m, zip.finish().unwrap().into_inner(), 400, "is a link", &name).await;

    let name = n();
    refused(&m, noise(1_500_000), 413, "over the limit of 1000000 bytes", &name).await;

    let name = n();
    let good = manifest(&name);
    let big = noise(400_000);
    refused(
        &m,
        crafted_tar_gz(&[("function.toml", good.as_bytes(), Regular, ""), ("blob", &big, Regular, "")]),
        400,
        "unpacks to more than 300000 bytes",
        &name,
    )
    .await;

    let name = n();
    let good = manifest(&name);
    let zeros = vec![0u8; 250_000];
    refused(
        &m,
        crafted_tar_gz(&[("function.toml", good.as_bytes(), Regular, ""), ("zeros", &zeros, Regular, "")]),
        400,
        "decompression bomb",
        &name,
    )
    .await;

    let name = n();
    refused(&m, crafted_tar_gz(&[("main.py", b"print(1)", Regular, "")]), 400, "no function.toml", &name).await;

    let name = n();
    let bad = format!("name = \"{name}\"\nruntime = \"process\"\n");
    refused(&m, crafted_tar_gz(&[("function.toml", bad.as_bytes(), Regular, "")]), 400, "needs command", &name).await;

    let name = n();
    refused(&m, crafted_tar_gz(&[("function.toml", b"name = [", Regular, "")]), 400, "not valid TOML", &name).await;

    // And a well-formed zip is taken.
    let name = n();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("function.toml", zip::write::SimpleFileOptions::default()).unwrap();
    zip.write_all(manifest(&name).as_bytes()).unwrap();
    let (status, v) = m.publish_bytes(zip.finish().unwrap().into_inner()).await;
    assert_eq!((status, v["version"].as_i64()), (201, Some(1)), "{v}");
}
