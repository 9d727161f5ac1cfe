"""Meta-learning: few-shot tasks, MAML / first-order MAML / Reptile / Meta-SGD, baselines, trainer."""
