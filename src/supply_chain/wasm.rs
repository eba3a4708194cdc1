//! Static checks of the wasm binary, before anything is compiled.

use wasmparser::{Parser, Payload, TypeRef, Validator, WasmFeatures};

use super::GateError;

/// The only import module a spell may use.
const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// The WASI preview 1 functions a spell may import. Sockets are left out: spells have no
/// network. Everything else is harmless under the host's context (no preopened directories, no
/// environment, captured stdio), and Rust's std links many of these even when unused.
const WASI_FUNCTIONS_ALLOWED: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "sched_yield",
    "random_get",
];

/// The wasm features spells may use; must agree with the sandbox's engine configuration.
/// Threads, shared memory, memory64, GC, exceptions and the component model are off: each
/// widens what a hostile module can do to the host for no benefit to a stdin→stdout spell.
pub fn features() -> WasmFeatures {
    let mut features = WasmFeatures::WASM2;
    for disabled in [
        WasmFeatures::THREADS,
        WasmFeatures::SHARED_EVERYTHING_THREADS,
        WasmFeatures::MEMORY64,
        WasmFeatures::GC,
        WasmFeatures::EXCEPTIONS,
        WasmFeatures::COMPONENT_MODEL,
    ] {
        features.remove(disabled);
    }
    features
}

/// Bounds on what a module may ask of the compiler, checked before any compiler sees it.
/// Cranelift's time and memory grow with each function's size, and worse than linearly with
/// the locals kept live across a body, so a module of a few hundred kilobytes can be built to
/// take seconds of a core and gigabytes to compile. rustc's output for real spells sits far
/// below these (`wordfreq`, with serde_json: 259 functions, the largest body 10 934 bytes with
/// 39 locals); wasmparser's own ceilings (a million functions, 7.6 MB bodies, 50 000
/// locals) are far above what a host should compile on request. Compilation itself is then
/// bounded in time by the sandbox's compile pool (`module_too_complex` too).
pub const DEFINED_FUNCTIONS_MAX: u32 = 20_000;
pub const FUNCTION_BODY_BYTES_MAX: usize = 256 * 1024;
pub const FUNCTION_LOCALS_MAX: u64 = 4_096;

pub fn check(bytes: &[u8]) -> Result<(), GateError> {
    let invalid = |message: String| GateError::ModuleInvalid(message);
    if !Parser::is_core_wasm(bytes) {
        return Err(invalid("not a core WebAssembly module".into()));
    }
    let mut validator = Validator::new_with_features(features());
    validator
        .validate_all(bytes)
        .map_err(|e| invalid(e.to_string()))?;

    let mut has_start = false;
    let mut functions_seen = 0u32;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| invalid(e.to_string()))? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| invalid(e.to_string()))?;
                    let allowed = import.module == WASI_MODULE
                        && matches!(import.ty, TypeRef::Func(_))
                        && WASI_FUNCTIONS_ALLOWED.contains(&import.name);
                    if !allowed {
                        return Err(GateError::ImportNotAllowed {
                            module: import.module.to_owned(),
                            name: import.name.to_owned(),
                        });
                    }
                }
            }
            Payload::FunctionSection(reader) if reader.count() > DEFINED_FUNCTIONS_MAX => {
                return Err(GateError::ModuleTooComplex(format!(
                    "the module defines {} functions; the limit is {DEFINED_FUNCTIONS_MAX}",
                    reader.count()
                )));
            }
            Payload::CodeSectionEntry(body) => {
                let index = functions_seen;
                functions_seen += 1;
                let size = body.range().len();
                if size > FUNCTION_BODY_BYTES_MAX {
                    return Err(GateError::ModuleTooComplex(format!(
                        "function {index} is {size} bytes; the limit is {FUNCTION_BODY_BYTES_MAX}"
                    )));
                }
                let mut locals = 0u64;
                for group in body
                    .get_locals_reader()
                    .map_err(|e| invalid(e.to_string()))?
                {
                    let (count, _) = group.map_err(|e| invalid(e.to_string()))?;
                    locals += u64::from(count);
                }
                if locals > FUNCTION_LOCALS_MAX {
                    return Err(GateError::ModuleTooComplex(format!(
                        "function {index} declares {locals} locals; the limit is {FUNCTION_LOCALS_MAX}"
                    )));
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(|e| invalid(e.to_string()))?;
                    if export.name == "_start" && export.kind == wasmparser::ExternalKind::Func {
                        has_start = true;
                    }
                }
            }
            _ => {}
        }
    }
    if !has_start {
        return Err(invalid(
            "a spell is a WASI command: it must export a function `_start`".into(),
        ));
    }
    Ok(())
}
