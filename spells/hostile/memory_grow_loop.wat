;; memory_grow_loop: `_start` calls `memory.grow 1` in a loop until it returns -1
;; (growth refused by the host's memory limit), then executes `unreachable`.
;; Expected host outcome: memory_limit_exceeded (the refused growth is what the
;; host reports, not the generic trap that follows it).
(module
  ;; No declared maximum: only the host's limiter stops the growth.
  (memory (export "memory") 1)
  (func (export "_start")
    (block $refused
      (loop $grow
        (br_if $refused
          (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $grow)))
    unreachable))
