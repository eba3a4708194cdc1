;; table_growth: `_start` grows a funcref table by 64 elements at a time with
;; `table.grow` until it returns -1 (growth refused by the host's table limit),
;; then executes `unreachable`.
;; Expected host outcome: memory_limit_exceeded (table growth refused by the
;; limits; without a table limit this would try to reach 2^32 elements).
(module
  (memory (export "memory") 1)
  ;; No declared maximum: only the host's limiter stops the growth.
  (table $t (export "table") 1 funcref)
  (func (export "_start")
    (block $refused
      (loop $grow
        (br_if $refused
          (i32.eq
            (table.grow $t (ref.null func) (i32.const 64))
            (i32.const -1)))
        (br $grow)))
    unreachable))
