"""Live cloud data: fetch offers, prices and quotas from a cloud's own APIs (AWS through boto3).

`aws_api` is the only module that imports boto3 (inside functions); `aws_catalog` turns what it returns into a user
catalog in SkyPilot's v8 `aws/vms.csv` layout; `aws_quota` turns EC2 vCPU quotas into the planner's capacity groups.
"""
