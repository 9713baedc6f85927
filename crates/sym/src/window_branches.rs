//! Whether a branch from anywhere in a function's object lands inside a jump's window: the
//! jump check's view beyond the probed function (see [`CodeBranches`]).

use dprobe_arch::{describe, Addr, NotOptimized};

use crate::cache::{code_sections, object_file};
use crate::symbols::Function;

/// Refuse a jump at `addr` in `function` when a direct branch anywhere in the function's
/// object (another function's tail jump into its middle, a split-off `.cold` part jumping
/// back) lands on bytes +1..+4 of it. The object's branches are decoded from its file once
/// per version of the file; a file that cannot be read refuses every jump in it.
pub fn check_object_branches(function: &Function, addr: Addr) -> Result<(), NotOptimized> {
    let unread = || NotOptimized::ObjectUnread { object: function.object.to_string() };
    let file = object_file(&function.object).ok_or_else(unread)?;
    let branches = file.code_branches().ok_or_else(unread)?;
    let at_run_time = |a: Addr| Addr(a.0.wrapping_add(function.bias));
    let Some((from, target)) = branches.into_window(Addr(addr.0.wrapping_sub(function.bias))) else {
        return Ok(());
    };
    let text = file
        .bytes()
        .and_then(|data| {
            let sections = code_sections(&data)?;
            let s = sections.iter().find(|s| (s.address..s.address + s.size).contains(&from.0))?;
            Some(describe(&s.bytes(&data)[(from.0 - s.address) as usize..], at_run_time(from)))
        })
        .unwrap_or_else(|| "a branch".to_owned());
    Err(NotOptimized::BranchIntoWindow { from: at_run_time(from), text, target: at_run_time(target) })
}
