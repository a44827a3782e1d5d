"""Alternative decoder heads (Table IV ablation)."""
