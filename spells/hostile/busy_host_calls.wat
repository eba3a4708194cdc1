;; busy_host_calls: `_start` loops forever calling host functions that return at
;; once: wasi clock_time_get, then fd_write of 0 bytes to stdout. Very little
;; fuel is spent per iteration, so most time is spent in the host.
;; Expected host outcome: deadline_exceeded or out_of_fuel (whichever limit is
;; hit first); never ok, never output_too_large (0 bytes are written).
(module
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  ;; iovec { buf = 64, buf_len = 0 } at 0, nwritten at 8, timestamp at 16.
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 0))
    (loop $busy
      (drop (call $clock_time_get
        (i32.const 1)    ;; clock id: monotonic
        (i64.const 1)    ;; precision
        (i32.const 16))) ;; where the timestamp goes
      (drop (call $fd_write
        (i32.const 1)    ;; fd: stdout
        (i32.const 0)    ;; iovs
        (i32.const 1)    ;; iovs_len
        (i32.const 8)))  ;; nwritten
      (br $busy))))
