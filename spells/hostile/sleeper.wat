;; sleeper: `_start` sleeps in wasi_snapshot_preview1 poll_oneoff on one clock
;; subscription of an hour, burning no CPU, until the wall-time limit ends it.
;; Expected host outcome: deadline_exceeded after wall_ms, having held a run slot
;; (never a worker thread) meanwhile. benches/noisy_neighbour.sh publishes it
;; (module.wasm is this file compiled, committed because the bench has no WAT
;; compiler).
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; One clock subscription at 0: tag 0 (clock) at 8, monotonic clock at 16,
    ;; timeout (ns) at 24; the event goes to 128, the count to 64.
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))
