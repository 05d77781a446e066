//! A process that starts a child of itself and waits: the tree the Windows tests kill as one.
//!
//! `tree_helper spawn` prints `child <pid>` on stderr, then sleeps a minute; its child
//! (`tree_helper sleep`) sleeps a minute too. A function that runs it past its timeout must
//! leave neither alive.

use std::time::Duration;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "spawn" {
        let me = std::env::current_exe().expect("the helper's own path");
        let mut child = std::process::Command::new(me).arg("sleep").spawn().expect("the child starts");
        eprintln!("child {}", child.id());
        // Waiting on the child keeps this process alive as long as it is: the tree stays
        // whole until the job object kills both.
        let _ = child.wait();
        return;
    }
    std::thread::sleep(Duration::from_secs(60));
}
