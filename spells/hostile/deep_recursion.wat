;; deep_recursion: `_start` calls a function that calls itself without bound
;; (not a tail call: the result is used after the call returns, so every level
;; keeps a frame).
;; Expected host outcome: trapped (stack overflow), reported as a trap, not a
;; crash of the host process.
(module
  (memory (export "memory") 1)
  (func $recurse (param $depth i64) (result i64)
    (i64.add
      (call $recurse (i64.add (local.get $depth) (i64.const 1)))
      (i64.const 1)))
  (func (export "_start")
    (drop (call $recurse (i64.const 0)))))
