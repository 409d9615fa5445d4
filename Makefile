# Thin aliases over tasks.py, which needs only python3.
.PHONY: demo test check bench
demo:
	python3 tasks.py demo
test:
	python3 tasks.py test
check:
	python3 tasks.py check
bench:
	python3 tasks.py bench
