"""Operations: facts in, commands out (or a no-op with a reason). Importing this package registers them."""
