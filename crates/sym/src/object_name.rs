//! What object a user means by `BINARY` in `BINARY:FUNCTION`: a path (one file), or a library
//! name (`libc` for `libc.so.6`, `libstdc++` for `libstdc++.so.6`). The one place where such
//! names are matched, for every engine and for `dprobe list`.

use crate::resolve::ResolveError;

/// A `BINARY` as the user wrote it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectName {
    /// A path (it has a `/`): the file it names, canonical.
    Path(String),
    /// A file name or a library name, matched against loaded objects' file names.
    Name(String),
}

impl ObjectName {
    /// Read `binary`: a path must name an existing file (a relative path is taken from the
    /// current directory), so that a typo is an error at once and not a library that is
    /// "never loaded".
    pub fn new(binary: &str) -> Result<ObjectName, ResolveError> {
        if !binary.contains('/') {
            return Ok(ObjectName::Name(binary.to_owned()));
        }
        match std::fs::canonicalize(binary) {
            Ok(p) if p.is_file() => Ok(ObjectName::Path(p.to_string_lossy().into_owned())),
            Ok(_) => Err(ResolveError::NoSuchFile { path: binary.into(), reason: "it is not a file".into() }),
            Err(e) => Err(ResolveError::NoSuchFile { path: binary.into(), reason: e.to_string() }),
        }
    }

    /// Whether the object at `path` (as the kernel shows it in `/proc/PID/maps`: absolute,
    /// symbolic links resolved) is this one.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            ObjectName::Path(p) => p == path,
            ObjectName::Name(name) => library_name_matches(path.rsplit('/').next().unwrap_or(path), name),
        }
    }

    /// The file of this object for probes that no running process resolves (the kernel
    /// engine): a path as is; a library name through this process's own maps (dprobe is
    /// linked with libc), then the usual library directories.
    ///
    /// A name found is remembered for the life of the process (a glob over libc asks it once
    /// per function: each ask read this process's maps); one not found is looked for again.
    pub fn find_file(&self) -> Option<String> {
        static FOUND: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
            std::sync::Mutex::new(std::collections::BTreeMap::new());
        let name = match self {
            ObjectName::Path(p) => return Some(p.clone()),
            ObjectName::Name(n) => n,
        };
        let found = || FOUND.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = found().get(name) {
            return Some(path.clone());
        }
        let path = self.look_for_file(name)?;
        found().insert(name.clone(), path.clone());
        Some(path)
    }

    /// [`ObjectName::find_file`] for name `name`, looked for.
    fn look_for_file(&self, name: &str) -> Option<String> {
        if let Ok(maps) = crate::read_maps() {
            if let Some(p) =
                maps.iter().filter_map(|m| m.path.as_deref()).find(|p| p.starts_with('/') && self.matches(p))
            {
                return Some(p.to_owned());
            }
        }
        for dir in ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"] {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            let mut found: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|f| library_name_matches(f, name))
                .collect();
            found.sort();
            if let Some(f) = found.first() {
                return std::fs::canonicalize(format!("{dir}/{f}")).ok().map(|p| p.to_string_lossy().into_owned());
            }
        }
        None
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectName::Path(p) | ObjectName::Name(p) => f.write_str(p),
        }
    }
}

/// Whether file `file` is the library a user calls `name`: the file name itself, or a
/// versioned shared object of that name (`libc` → `libc.so.6`, `libc-2.31.so`; `c` →
/// `libc.so.6`, as the linker's `-lc`).
pub fn library_name_matches(file: &str, name: &str) -> bool {
    let after = |prefix: &str| file.strip_prefix(prefix);
    file == name
        || after(name).is_some_and(|rest| rest.starts_with(".so") || rest.starts_with('-'))
        || after("lib").and_then(|f| f.strip_prefix(name)).is_some_and(|rest| rest.starts_with(".so"))
}

/// Whether the object at `path` is the C library or the dynamic loader (by file name:
/// `libc.so.6`, `ld-linux-x86-64.so.2`; `libc-2.31.so` and `ld-2.31.so` before glibc 2.34):
/// loaded before the program starts and never unloaded.
pub fn is_c_library_or_loader(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    ["libc.so", "libc-", "ld-linux", "ld-"].iter().any(|p| file.starts_with(p))
}

/// Whether the object at `path` is one of glibc's whose indirect functions' resolvers only read
/// the processor's features the loader recorded (through the loader's `_rtld_global_ro`): the C
/// library, the loader, the maths library (`libm.so.6`: `floor`, `sin`, `exp`…) and its vector
/// variants (`libmvec.so.1`). By file name, as [`is_c_library_or_loader`].
pub fn resolvers_read_only_cpu_features(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    is_c_library_or_loader(path) || ["libm.so", "libm-", "libmvec.so", "libmvec-"].iter().any(|p| file.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_whose_resolvers_read_only_cpu_features() {
        for path in
            ["/lib/x86_64-linux-gnu/libm.so.6", "libmvec.so.1", "libm-2.31.so", "libc.so.6", "ld-linux-x86-64.so.2"]
        {
            assert!(resolvers_read_only_cpu_features(path), "{path}");
        }
        for path in ["/usr/lib/libmagic.so.1", "libmpfr.so.6", "libstdc++.so.6", "libcrypto.so.3"] {
            assert!(!resolvers_read_only_cpu_features(path), "{path}");
        }
    }

    #[test]
    fn library_names() {
        for (file, name) in [
            ("libc.so.6", "libc"),
            ("libc.so.6", "libc.so.6"),
            ("libc.so.6", "c"),
            ("libc-2.31.so", "libc"),
            ("libstdc++.so.6", "libstdc++"),
            ("ld-linux-x86-64.so.2", "ld"),
        ] {
            assert!(library_name_matches(file, name), "{name} names {file}");
        }
        for (file, name) in
            [("libcrypt.so.1", "libc"), ("libc.so.6", "lib"), ("libstdc++.so.6", "libstdc"), ("libm.so.6", "c")]
        {
            assert!(!library_name_matches(file, name), "{name} does not name {file}");
        }
    }

    #[test]
    fn a_path_that_does_not_exist_is_an_error() {
        let e = ObjectName::new("./no/such/program").unwrap_err();
        assert!(matches!(e, ResolveError::NoSuchFile { ref path, .. } if path == "./no/such/program"), "{e:?}");
        assert!(e.to_string().contains("./no/such/program"), "{e}");
        assert!(matches!(ObjectName::new("libc"), Ok(ObjectName::Name(_))));
        let exe = std::env::current_exe().unwrap();
        let here = ObjectName::new(exe.to_str().unwrap()).unwrap();
        assert!(here.matches(&std::fs::canonicalize(&exe).unwrap().to_string_lossy()));
    }
}
