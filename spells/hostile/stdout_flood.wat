;; stdout_flood: fills a 64 KiB buffer with 'A' and writes it to fd 1 (stdout)
;; with wasi_snapshot_preview1 fd_write in an endless loop, ignoring any errno.
;; Expected host outcome: output_too_large (as soon as stdout passes
;; output_bytes_max; the host must not buffer without bound).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  ;; Page 0: iovec at 0, nwritten at 8. Page 1: the 64 KiB buffer.
  (memory (export "memory") 2)
  (func (export "_start")
    (local $i i32)
    ;; Fill 65536..131072 with 'A' (0x41), 8 bytes at a time.
    (local.set $i (i32.const 65536))
    (loop $fill
      (i64.store (local.get $i) (i64.const 0x4141414141414141))
      (local.set $i (i32.add (local.get $i) (i32.const 8)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 131072))))
    ;; iovec { buf = 65536, buf_len = 65536 }
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $flood
      (drop (call $fd_write
        (i32.const 1)    ;; fd: stdout
        (i32.const 0)    ;; iovs
        (i32.const 1)    ;; iovs_len
        (i32.const 8)))  ;; nwritten
      (br $flood))))
