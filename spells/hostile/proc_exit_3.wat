;; proc_exit_3: `_start` calls wasi_snapshot_preview1 proc_exit(3). The
;; `unreachable` after it only runs if the host's proc_exit wrongly returns.
;; Expected host outcome: exit_code 3 (a non-zero exit, not a trap).
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $proc_exit (i32.const 3))
    unreachable))
