//! A safe `fork`: the child prints its pid and its parent's, the parent prints both and reaps
//! the child, so no zombie is left.

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

fn main() -> nix::Result<()> {
    // SAFETY: this program has one thread here, and the child only prints and calls `_exit`.
    match unsafe { fork() }? {
        ForkResult::Child => {
            println!(
                "child: my pid is {}, my parent's is {}",
                std::process::id(),
                std::os::unix::process::parent_id()
            );
            // SAFETY: `_exit` ends the child without running the parent's destructors twice.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            println!(
                "parent: my pid is {}, my child's is {child}",
                std::process::id()
            );
            let status = waitpid(child, None)?;
            let code = match status {
                WaitStatus::Exited(_, code) => code,
                _ => -1,
            };
            let zombie = std::path::Path::new(&format!("/proc/{child}")).exists();
            println!(
                "parent: reaped child {child} (exit code {code}); zombie left: {}",
                if zombie { "yes" } else { "no" }
            );
        }
    }
    Ok(())
}
