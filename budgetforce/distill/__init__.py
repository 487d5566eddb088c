"""Distillation: teacher traces with rejection sampling, the seed's three targets, LoRA students, the table.

The workflow of R1-distilled students, pointed at any OpenAI-compatible teacher:

    budgetforce distill generate --base-url URL --dataset gsm8k -k 4 --out runs/d/gen
    budgetforce distill build --from runs/d/gen --out runs/d/targets
    budgetforce distill train --base STUDENT --data runs/d/targets/teacher.jsonl --out runs/d/teacher
    budgetforce distill eval --eval gsm8k -t teacher=runs/d/teacher/merged -t human=... -t direct=...

See docs/distill.md.
"""
