"""Operations around the app: the queue of long runs, a real deployment, certificates, Ray."""
