//! Why a program dprobe started could not be executed, in words: its `execve`'s `errno`, told
//! apart where one number has several causes.

use std::path::Path;

use nix::errno::Errno;

/// Why `program` could not be executed, its `execve` having failed with `errno` (`None`: not
/// known).
pub(crate) fn why(program: &str, errno: Option<i32>) -> String {
    let file = Path::new(program);
    let Some(errno) = errno else { return "it could not be executed".into() };
    match errno {
        // The file is there: what it names to run it is not.
        libc::ENOENT if file.exists() => {
            "its interpreter was not found (the ELF interpreter it names, or the program on its `#!` line)".into()
        }
        libc::ENOENT => "no such file".into(),
        libc::EACCES if file.is_dir() => "it is a directory".into(),
        libc::EACCES => {
            "permission denied (it is not executable, its file system is mounted noexec, or a directory on its \
             path cannot be searched)"
                .into()
        }
        libc::ENOEXEC => "it is not a program this system can run (a script needs a `#!` line; trace one without \
                          as `sh SCRIPT`)"
            .into(),
        libc::ETXTBSY => "it is open for writing".into(),
        libc::ENOTDIR => "a part of its path is not a directory".into(),
        libc::ELOOP => "too many symbolic links on its path".into(),
        libc::E2BIG => "its arguments and environment are too long".into(),
        other => format!("it could not be executed: {}", Errno::from_raw(other).desc().to_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_in_words() {
        assert_eq!(why("/no/such/program", Some(libc::ENOENT)), "no such file");
        assert!(why("/bin/sh", Some(libc::ENOENT)).starts_with("its interpreter was not found"), "the file is there");
        assert_eq!(why("/", Some(libc::EACCES)), "it is a directory");
        assert!(why("/etc/passwd", Some(libc::EACCES)).starts_with("permission denied"));
        assert!(why("/etc/passwd", Some(libc::ENOEXEC)).contains("`#!` line"));
        assert_eq!(why("/x", Some(libc::ENOMEM)), "it could not be executed: out of memory");
        assert_eq!(why("/x", None), "it could not be executed");
    }
}
