//! Whether a branch from anywhere in a function's object lands inside a jump's window: the
//! jump check's view beyond the probed function (see [`CodeBranches`]).

use std::sync::{Arc, Mutex};

use dprobe_arch::{Addr, InsnText, NotOptimized, JUMP_LEN};

use crate::cache::{code_sections, object_file, IntoWindow, ObjectFile};
use crate::symbols::Function;

/// Refuse a jump at `addr` in `function` when a direct branch anywhere in the function's
/// object (another function's tail jump into its middle, a split-off `.cold` part jumping
/// back) lands on bytes +1..+4 of it, or an exception's landing pad lies there (a throw would
/// resume in the middle of the jump). The first few windows of an object are checked by a
/// scan of its code for branches that land in each, the next ones against all its branches,
/// decoded once per version of the file; a file that cannot be read refuses every jump in it.
pub fn check_object_branches(function: &Function, addr: Addr) -> Result<(), NotOptimized> {
    check_object_branches_in(function, addr, JUMP_LEN as u64)
}

/// [`check_object_branches`] for a window whose every byte after the first must be free of
/// branch targets, `len` bytes long (a return probe's exit window, which ends with the exit
/// that other code may jump back to).
pub fn check_object_branches_in(function: &Function, addr: Addr, len: u64) -> Result<(), NotOptimized> {
    let unread = || NotOptimized::ObjectUnread { object: function.object.to_string() };
    let file = object_of(function).ok_or_else(unread)?;
    let at_run_time = |a: Addr| Addr(a.0.wrapping_add(function.bias));
    let at_link_time = Addr(addr.0.wrapping_sub(function.bias));
    let (from, target) = match file.what_lands_in(at_link_time, len).ok_or_else(unread)? {
        IntoWindow::Nothing => return Ok(()),
        IntoWindow::LandingPad(p) => {
            return Err(NotOptimized::LandingPadInWindow { pad: at_run_time(p.pad), calls: at_run_time(p.calls) })
        }
        IntoWindow::Branch(from, target) => (from, target),
    };
    let text = file
        .bytes()
        .and_then(|data| {
            let sections = code_sections(&data)?;
            let s = sections.iter().find(|s| (s.address..s.address + s.size).contains(&from.0))?;
            Some(InsnText::of(&s.bytes(&data)[(from.0 - s.address) as usize..], at_run_time(from)))
        })
        .unwrap_or_else(|| "a branch".into());
    Err(NotOptimized::BranchIntoWindow { from: at_run_time(from), text, target: at_run_time(target) })
}

/// The object file last asked for by [`object_of`], by its path.
static LAST: Mutex<Option<(Arc<str>, Arc<ObjectFile>)>> = Mutex::new(None);

/// Forget the object file last asked for (see `cache::forget_object_files`).
pub(crate) fn forget_last_object() -> Option<(Arc<str>, Arc<ObjectFile>)> {
    LAST.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// The object file `function` was read from. The functions of one version of a file share one
/// path (`Function::object`), so the last one asked for is known by that path's identity: a
/// batch of ten thousand probes in one object looks its file up once, not once per probe.
fn object_of(function: &Function) -> Option<Arc<ObjectFile>> {
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((path, file)) = last.as_ref() {
        if Arc::ptr_eq(path, &function.object) {
            return Some(file.clone());
        }
    }
    let file = object_file(&function.object)?;
    *last = Some((function.object.clone(), file.clone()));
    Some(file)
}
